"""Fine-tuning a pre-trained GVSL backbone into a segmentation model (``gvsl finetune``)."""
from gvsl.finetune.config import MODES, FinetuneConfig
from gvsl.finetune.data import Case, find_cases
from gvsl.finetune.engine import FinetuneResult, run_finetune

__all__ = ["MODES", "Case", "FinetuneConfig", "FinetuneResult", "find_cases",
           "run_finetune"]
