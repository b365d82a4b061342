"""``python -m mlx_bald ...`` = ``mlx-bald ...`` (torchrun launches modules: ``torchrun
--nproc_per_node N -m mlx_bald compress ...``)."""
import sys

from mlx_bald.cli.main import main

sys.exit(main())
