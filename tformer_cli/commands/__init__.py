"""One module per command (or family of commands); each defines register(app).

Keep module level free of heavy imports (torch, matplotlib, numpy): import them inside
the command function, so that `tformer --help` stays instant.
"""

from tformer_cli.commands import bench, experiments, info, inside, sample, train

COMMAND_MODULES = [train, bench, info, inside, sample, experiments]
