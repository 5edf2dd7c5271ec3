"""loraplace: where should the LoRA adapters go?

Strategies are short strings (``all``, ``attn``, ``mlp@last:8``) compiled to standard PEFT
adapters for any Hugging Face causal LM; studies train them under identical conditions over
several seeds and report costs and gains with confidence intervals.
"""

from loraplace.errors import LoraplaceError
from loraplace.strategy import Strategy, parse_strategy

__version__ = "0.1.0"
__all__ = ["LoraplaceError", "Strategy", "parse_strategy", "__version__"]
