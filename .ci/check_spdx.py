# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Every source file starts with tt-xla's SPDX notice (its pre-commit's check-copyright): Python,
shell and config files with `#` comments, C++ with `//`. Prints each file without it; exit 1 then.

    python .ci/check_spdx.py [FILE ...]   (default: every file git tracks)
"""

import re
import subprocess
import sys
from pathlib import Path

NOTICE = "SPDX-FileCopyrightText: (c) {years} Tenstorrent AI ULC\n{c}\n{c} SPDX-License-Identifier: Apache-2.0\n"
COMMENT = {
    ".py": "#",
    ".sh": "#",
    ".ini": "#",
    ".toml": "#",
    ".txt": "#",
    ".yaml": "#",
    ".cc": "//",
    ".h": "//",
}
SCRIPTS = {".ci/run": "#"}  # shell scripts without an extension


def expected(path: str) -> str | None:
    """The comment marker the notice takes in `path`, or None for a file that carries none."""
    return SCRIPTS.get(path, COMMENT.get(Path(path).suffix))


def has_notice(text: str, c: str) -> bool:
    lines = text.splitlines(keepends=True)
    start = 1 if lines and lines[0].startswith("#!") else 0
    head = "".join(lines[start : start + 3])
    pattern = re.escape(f"{c} " + NOTICE.format(years="YEARS", c=c)).replace(
        "YEARS", r"\d{4}(-\d{4})?"
    )
    return re.match(pattern, head) is not None


def main(paths: list[str]) -> int:
    files = (
        paths
        or subprocess.run(
            ["git", "ls-files"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    missing = [
        p
        for p in files
        if (c := expected(p)) is not None and not has_notice(Path(p).read_text(), c)
    ]
    for path in missing:
        print(f"{path}: no SPDX notice at the top (see .ci/check_spdx.py)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
