"""Token ids → text pieces for streaming: stop strings, and no half-decoded characters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

# What byte-fallback tokenizers decode an incomplete UTF-8 sequence to.
REPLACEMENT = "\ufffd"


class TextStream:
    """The text of one choice, released piece by piece as its tokens arrive.

    A token may complete a multi-byte character a previous one started, and a decoder may treat a
    sequence's first token specially (SentencePiece drops its leading space), so each new token is
    decoded together with the tokens of the last settled piece, and only the text after theirs is
    new; a piece settles once it ends in a whole character. That keeps each push to a few tokens
    of decoding however long the text grows (past the context, rows run to 4 contexts).

    Two kinds of tail are held back until the next token decides them: replacement characters
    (maybe half a character) and a suffix that could start a stop string.
    """

    def __init__(self, decode: Callable[[Iterable[int]], str], stop: list[str]):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far, cut before a stop string once one is seen
        self.sent = 0  # characters of self.text already released
        self._settled = ""  # the text of ids[:_read_at], which no later token changes
        self._prefix_at = 0  # ids[_prefix_at:_read_at]: the left context of the next decode
        self._read_at = 0
        self._stopped = False

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns (newly released text, whether a stop string ended the text)."""
        self.ids.append(token)
        self.text = self._decoded()
        # A stop string cannot start in released text (its possible starts were held back).
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self._stopped = True
            return self._release(len(self.text)), True
        safe = len(self.text)
        while safe > self.sent and self.text[safe - 1] == REPLACEMENT:
            safe -= 1
        for s in self.stop:
            # The longest proper prefix of s the text ends with may still become s.
            for k in range(min(len(s) - 1, safe), 0, -1):
                if self.text.endswith(s[:k], 0, safe):
                    safe -= k
                    break
        return self._release(safe), False

    def finish(self) -> str:
        """The held-back rest, once no token will follow."""
        if not self._stopped:
            self.text = self.decode(self.ids)  # once per choice: whatever is still undecided
        return self._release(len(self.text))

    def _decoded(self) -> str:
        """decode(self.ids), decoding only the newest tokens and the last settled piece's."""
        context = self.decode(self.ids[self._prefix_at : self._read_at])
        tail = self.decode(self.ids[self._prefix_at :])
        if not tail.startswith(context):
            # The decoder rewrote the context because of the new token (HF's byte fallback turns
            # a run of byte tokens into replacement characters until it is valid UTF-8): nothing
            # new is decided yet; a later token, or finish(), settles it.
            return self._settled
        text = self._settled + tail[len(context) :]
        if len(tail) > len(context) and not tail.endswith(REPLACEMENT):
            self._settled = text
            self._prefix_at, self._read_at = self._read_at, len(self.ids)
        return text

    def _release(self, upto: int) -> str:
        piece = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece
