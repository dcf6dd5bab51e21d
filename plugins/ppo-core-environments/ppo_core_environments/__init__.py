"""ppo-core-environments: the environments ``retry_with_feedback``, ``calculator`` and ``guess_number`` and their
SFT transcript datasets, registered with ppo-core through the ``ppo_core`` entry point ``environments``."""

from .arithmetic import CalcError, evaluate
from .calculator import Calculator, CalculatorOptions
from .guess_number import GuessNumber, GuessNumberOptions
from .retry import RetryOptions, RetryWithFeedback
from .transcripts import CalculatorTranscripts, GuessNumberTranscripts, RetryTranscriptOptions, RetryTranscripts, play

__version__ = "0.1.0"

__all__ = [
    "CalcError",
    "Calculator",
    "CalculatorOptions",
    "CalculatorTranscripts",
    "GuessNumber",
    "GuessNumberOptions",
    "GuessNumberTranscripts",
    "RetryOptions",
    "RetryTranscriptOptions",
    "RetryTranscripts",
    "RetryWithFeedback",
    "evaluate",
    "play",
]
