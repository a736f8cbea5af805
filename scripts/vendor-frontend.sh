#!/usr/bin/env bash
# Fetch the web panel's front-end libraries from the npm registry into
# mtaserver/admin/panel/static/vendor/, checking each tarball against its published sha512
# integrity (the "dist.integrity" of `npm view <name>@<version>`). The files are committed: the
# panel never loads anything from outside at run time. Run again only to change a version
# (then update the version and its integrity below, from `npm view`).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=mtaserver/admin/panel/static/vendor
registry=https://registry.npmjs.org
# name version integrity, then file-in-tarball:name-in-vendor pairs
libs=(
  "htmx.org 2.0.11 sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA== dist/htmx.min.js:htmx.min.js LICENSE:htmx.LICENSE"
  "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw== dist/uPlot.iife.min.js:uPlot.iife.min.js dist/uPlot.min.css:uPlot.min.css LICENSE:uPlot.LICENSE"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
for entry in "${libs[@]}"; do
  read -r name version integrity files <<<"$entry"
  tarball="$work/$name-$version.tgz"
  curl -fsS -o "$tarball" "$registry/$name/-/${name##*/}-$version.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$got" != "$integrity" ]; then
    echo "$name@$version: integrity mismatch: got $got, expected $integrity" >&2
    exit 1
  fi
  mkdir -p "$work/$name"
  tar -xzf "$tarball" -C "$work/$name"
  for pair in $files; do  # the last read variable holds the rest of the line: every file
    cp "$work/$name/package/${pair%%:*}" "$dest/${pair#*:}"
  done
  echo "$name@$version: ok" >&2
done
echo "htmx.org 2.0.11, uplot 1.6.32 (registry.npmjs.org, sha512 checked)" >"$dest/VERSIONS"
