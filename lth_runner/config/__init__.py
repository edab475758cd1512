from lth_runner.config.compose import register_resolvers

register_resolvers()
