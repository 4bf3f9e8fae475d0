"""The one exception every layer above the networks raises for bad input from the user, and the checks that raise
it for any script."""
import torch


class UserError(Exception):
    """Bad input from the user: reported as one line and a non-zero exit, never a traceback."""


def unreadable_torch_file(error: Exception) -> str:
    """Why torch.load could not read a file, in a few words. torch's own messages run to several lines and, for a
    file that is no torch file at all, advise weights_only=False, which is never the fix for a user's file."""
    return f"not a complete file written by torch.save ({type(error).__name__})"


def refuse_non_finite(samples: torch.Tensor, what: str, advice: str) -> None:
    """A one-line UserError naming how many of `samples` (along dim 0) hold a NaN or an infinity."""
    bad = int((~torch.isfinite(samples.reshape(len(samples), -1))).any(dim=1).sum())
    if bad:
        raise UserError(f"{bad} of {len(samples)} {what} contain NaN or Inf; {advice}")
