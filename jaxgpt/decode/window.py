"""The sliding window: how generation goes on once a row's cache holds the whole context.

Offline generation (`decode.generate`) and the server (`serve.engine`) both slide with these
two functions, so a row past the context gets the same text from either.
"""

from __future__ import annotations

from collections.abc import Sequence


def window_size(block_size: int) -> int:
    """Tokens a row keeps when its cache is full and generation goes on: half the context.

    Each slide re-runs the model over the kept tokens (one prefill), then decodes block_size − W
    tokens one by one before the next. Half keeps at least half a context of history in view
    while the re-prefill costs about one token's forward per generated token, spread out.
    """
    return max(block_size // 2, 1)


def slide(tokens: Sequence[int], block_size: int) -> list[int]:
    """What a row whose cache is full keeps before it feeds its next token.

    `tokens` is the row's text so far (prompt and drawn tokens, the one about to be fed last);
    the row keeps its last window_size(block_size) tokens (all of them if it has fewer) and the
    model re-reads them from position 0 in a fresh cache, so their position ids start again at
    0 as in a forward pass over the window. The row's step keys go on where they were.
    """
    return list(tokens[-window_size(block_size) :])
