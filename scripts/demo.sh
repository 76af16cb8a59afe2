#!/usr/bin/env bash
# The main job, end to end, on a generated sample image in the default store:
# import an OCI image, show the graph, export every layer bit for bit, check.
set -euo pipefail
cd "$(dirname "$0")/.."
layerfs=$PWD/bin/layerfs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

echo "store: ${LAYERFS_STORE:-default (/var/lib/layerfs as root, \$XDG_DATA_HOME/layerfs otherwise)}"
go run ./tests/gen -o "$work/image" -kind sample -name demo:latest >/dev/null

say layerfs import-image "$work/image"
id=$("$layerfs" import-image "$work/image")
echo "$id"

say layerfs images
"$layerfs" images
say layerfs layers
"$layerfs" layers
say layerfs tree
"$layerfs" tree

say "layerfs export each layer, compare with the image's diff_ids"
i=0
for diff in $("$layerfs" inspect -f '{{range .config.rootfs.diff_ids}}{{.}} {{end}}' demo:latest); do
	chain=$("$layerfs" inspect -f "{{index .layers $i}}" demo:latest)
	got=sha256:$("$layerfs" export "$chain" | sha256sum | cut -d' ' -f1)
	if [ "$got" = "$diff" ]; then verdict=ok; else verdict=MISMATCH; fi
	echo "layer $((i+1)): ${chain:7:12}  export $got  $verdict"
	[ "$verdict" = ok ] || exit 1
	i=$((i+1))
done

say "layerfs import a layer by hand on top of the image, by ID prefix"
top=$("$layerfs" inspect -f '{{range .layers}}{{.}} {{end}}' demo:latest | awk '{print substr($NF, 8, 12)}')
mkdir -p "$work/extra/opt" && echo "added by hand" > "$work/extra/opt/hello"
tar -C "$work/extra" -czf "$work/extra.tar.gz" opt
"$layerfs" import --parent "$top" "$work/extra.tar.gz"
"$layerfs" tree

say layerfs check
"$layerfs" check
