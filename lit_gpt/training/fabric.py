"""Lightning Fabric, imported without lightning.pytorch and torchmetrics: import Fabric's names from here.

`import lightning` imports lightning.pytorch, and Fabric's own version check imports torchmetrics, which imports
transformers, scipy and matplotlib: ~2.5 s of CPU in every process (each stage script, each rank, each test that starts
one). The same Fabric is the package `lightning_fabric` (it comes with lightning, inside its requirement
pytorch-lightning); torchmetrics is hidden while it imports, so that its check finds it absent. Fabric wants it only
for its spike detector and the FSDP strategy's metric objects, neither of which runs here (lit_gpt/training/spikes.py
is this project's own; training shards with ModelParallelStrategy). Objects of the two copies of Fabric
(`lightning.fabric` and `lightning_fabric`) do not mix: code that hands a Fabric or a strategy to this package builds
it from here.
"""

import sys

_hide = "torchmetrics" not in sys.modules
if _hide:
    sys.modules["torchmetrics"] = None  # `import torchmetrics` raises ImportError: Fabric's check says "not installed"
try:
    import lightning_fabric as L
    from lightning_fabric.loggers import CSVLogger, Logger, TensorBoardLogger
    from lightning_fabric.strategies import ModelParallelStrategy
    from lightning_fabric.strategies.model_parallel import _load_raw_module_state
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    from lightning_fabric.utilities.types import _Stateful
    from lightning_fabric.wrappers import _unwrap_objects
finally:
    if _hide:
        del sys.modules["torchmetrics"]

__all__ = ["L", "CSVLogger", "Logger", "ModelParallelStrategy", "TensorBoardLogger", "rank_zero_only"]
__all__ += ["_Stateful", "_load_raw_module_state", "_unwrap_objects"]
