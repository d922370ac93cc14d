"""Print the requirements of jaxgpt with some extras, one a line, read from pyproject.toml.

The images install these first, in a layer of their own, and the project itself after with
`--no-deps`: a code change then rebuilds only the last, small layer, not TensorFlow and JAX.

    python deploy/requirements.py pyproject.toml serve,cloud > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# "jaxgpt[serve,onnx]" inside an extra: the project naming its own extras.
_SELF = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*\[([^\]]*)\]\s*$")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies plus those of `extras` (self-references expanded), in order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out = list(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise ValueError(
                f"{pyproject} has no extra {extra!r} (it has: {', '.join(sorted(optional))}); "
                "fix EXTRAS in the Dockerfile or add the extra to [project.optional-dependencies]"
            )
        for req in optional[extra]:
            own = _SELF.match(req)
            if own and own.group(1).replace("_", "-").lower() == project["name"].lower():
                pending += [e.strip() for e in own.group(2).split(",") if e.strip()]
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python deploy/requirements.py PYPROJECT EXTRA[,EXTRA...]", file=sys.stderr)
        return 2
    try:
        lines = requirements(Path(argv[0]), [e for e in argv[1].split(",") if e])
    except ValueError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
