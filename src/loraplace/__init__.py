"""loraplace: where should the LoRA adapters go?

Strategies are short strings (``all``, ``attn``, ``mlp@last:8``) compiled to standard PEFT
adapters for any Hugging Face causal LM; studies train them under identical conditions over
several seeds and report costs and gains with the statistics a reviewer would accept.

The Python API (README, "Python API"): :func:`plan`, :func:`run`, :func:`study` and
:func:`load_study`; the command line is a thin layer over the same functions.
"""

from loraplace.api import StudyResults, load_study, plan, run, study
from loraplace.errors import LoraplaceError
from loraplace.placement.grammar import Strategy, parse_strategy
from loraplace.version import __version__

__all__ = [
    "LoraplaceError",
    "Strategy",
    "StudyResults",
    "load_study",
    "parse_strategy",
    "plan",
    "run",
    "study",
    "__version__",
]
