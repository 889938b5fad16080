#!/usr/bin/env bash
# Rebuild emoji64.zip, the bundled models' training set: the 64x64 PNGs of Noto Emoji (Apache 2.0) and Twemoji
# (CC-BY 4.0) as published in the emoji-datasource npm packages, 7,572 images in all.
# Usage: bash docs/make_emoji64.sh [OUT_ZIP]   (default emoji64.zip; needs npm, tar and python3)
set -euo pipefail
out="$(realpath -m "${1:-emoji64.zip}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 >/dev/null
for set in google twitter; do
    mkdir -p "emoji64/$set"
    tar -xzf "emoji-datasource-$set-16.0.0.tgz" -C "emoji64/$set" --strip-components=4 "package/img/$set/64/"
done
cat > emoji64/NOTICE.txt <<'NOTICE'
emoji64: 64x64 RGBA PNG emoji images, repacked unchanged from two public npm packages.

google/  - from emoji-datasource-google 16.0.0 (images of Google's Noto Emoji, Apache License 2.0)
twitter/ - from emoji-datasource-twitter 16.0.0 (images of Twemoji, CC-BY 4.0: "Twemoji graphics by Twitter, Inc and other contributors")
The packaging code of emoji-datasource (emoji-data by Cal Henderson) is MIT licensed.
NOTICE
python3 - "$out" <<'PY'
import sys, zipfile
from pathlib import Path
files = sorted(p for p in Path("emoji64").rglob("*") if p.is_file())
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    for p in files:
        z.write(p, p.as_posix())
print(f"{sys.argv[1]}: {sum(p.suffix == '.png' for p in files)} images")
PY
