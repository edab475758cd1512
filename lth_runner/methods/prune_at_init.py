"""Pruning at initialisation: the SNIP / GraSP baselines of paper 004's tables.

SNIP (Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019, Sec. 4) and GraSP
(Wang et al., "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020, Alg. 1) score the
initial weights once on training data, keep the top ``1 - sparsity.target`` (``sparsity.scope``: global by
default, as both papers), and train the sparse network from its initialisation. Any registered criterion works
(``magnitude`` and ``random`` give the usual controls). The scores come from :mod:`lth_runner.sparse.criteria`
(batches and GraSP's temperature/samples per class from the ``sparsity`` group).
"""

from __future__ import annotations

from lth_runner.config.schema import PruneAtInitConfig
from lth_runner.methods.controls import controls_from_init
from lth_runner.session import RunContext
from lth_runner.sparse import CRITERIA, MaskEnforcer, prune_to_density, remaining_fraction, unwrap
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import Stage

TICKET_KEY = "round01/ticket"


def prune_at_init(run: RunContext) -> Summary:
    """Score the initialisation, prune once, train the sparse network."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, PruneAtInitConfig)
    density = remaining_fraction(cfg.sparsity.target)
    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    run.log_start(total, densities=[density], criterion=method.criterion)

    def at_init():
        scores = CRITERIA.get(method.criterion)(
            {n: p.detach() for n, p in params.items()}, run.criterion_context(model, "at_init")
        )
        return prune_to_density(scores, density, scope=cfg.sparsity.scope)

    mask = run.mask("round_01", at_init, round=1, criterion=method.criterion)
    enforcer = MaskEnforcer(params, mask)
    ticket = run.train(
        Stage(TICKET_KEY, 1, "ticket", method.train_epochs or cfg.trainer.epochs, density=mask.density()),
        model,
        enforcer,
    )
    results = [ticket]
    controls = controls_from_init(
        run, round_index=1, mask=mask, model=model, enforcer=enforcer, init_state=init_state, results=results
    )
    rounds = [round_summary(1, mask.num_kept(), total, ticket, controls)]
    return run.write_summary(total, results=results, final=ticket, kept=mask.num_kept(), round_index=1,
                             rounds=rounds, controls=controls, details={"criterion": method.criterion},
                             complete=True)  # fmt: skip
