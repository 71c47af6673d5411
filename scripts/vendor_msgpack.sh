#!/usr/bin/env bash
# Refresh static/vendor/msgpack/ from the npm registry: the ESM build of @msgpack/msgpack, its
# licence and a VERSION file. The page has no build step and loads no CDN, so the browser copy lives
# in the repository; run this script to move to another version, then commit the result.
#
#   scripts/vendor_msgpack.sh            # newest published version
#   scripts/vendor_msgpack.sh 3.1.3      # a given version
set -euo pipefail

version="${1:-latest}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
destination="$repo_root/static/vendor/msgpack"
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

command -v npm >/dev/null || { echo "vendor_msgpack: npm is required" >&2; exit 1; }

(cd "$workdir" && npm pack --silent "@msgpack/msgpack@$version" >/dev/null)
tar -xzf "$workdir"/msgpack-msgpack-*.tgz -C "$workdir"
package="$workdir/package"

# The ESM dist is a tree of small modules importing each other by relative path: copy the whole tree.
esm_dir="$package/dist.esm"
[ -f "$esm_dir/index.mjs" ] || { echo "vendor_msgpack: $esm_dir/index.mjs not found in the package" >&2; exit 1; }

rm -rf "$destination"
mkdir -p "$destination"
(cd "$esm_dir" && find . -name '*.mjs' -print0 | while IFS= read -r -d '' file; do
    mkdir -p "$destination/$(dirname "$file")"
    # The source maps are not vendored: drop the comments that point at them.
    sed '/^\/\/# sourceMappingURL=/d' "$file" > "$destination/$file"
done)
cp "$package/LICENSE" "$destination/LICENSE"
node -e 'const p=require(process.argv[1]); console.log(`${p.name} ${p.version} (${p.license})`)' \
    "$package/package.json" > "$destination/VERSION"

echo "vendored $(cat "$destination/VERSION") into ${destination#"$repo_root"/}"
