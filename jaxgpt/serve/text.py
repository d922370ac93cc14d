"""Token ids → text pieces for streaming: stop strings, and no half-decoded characters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

# What byte-fallback tokenizers decode an incomplete UTF-8 sequence to.
REPLACEMENT = "\ufffd"


class TextStream:
    """The text of one choice, released piece by piece as its tokens arrive.

    Text is re-decoded from all ids each time (a token may complete a multi-byte character a
    previous one started). Two kinds of tail are held back until the next token decides them:
    replacement characters (maybe half a character) and a suffix that could start a stop string.
    """

    def __init__(self, decode: Callable[[Iterable[int]], str], stop: list[str]):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far, cut before a stop string once one is seen
        self.sent = 0  # characters of self.text already released

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns (newly released text, whether a stop string ended the text)."""
        self.ids.append(token)
        self.text = self.decode(self.ids)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._release(len(self.text)), True
        safe = len(self.text)
        while safe > self.sent and self.text[safe - 1] == REPLACEMENT:
            safe -= 1
        for s in self.stop:
            # The longest proper prefix of s the text ends with may still become s.
            for k in range(min(len(s) - 1, safe), 0, -1):
                if self.text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return self._release(safe), False

    def finish(self) -> str:
        """The held-back rest, once no token will follow."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece
