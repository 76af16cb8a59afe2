// Command layerfs-overlay is layerfs's union as a drop-in for
// fuse-overlayfs: the mount program of containers/storage, moby's
// fuse-overlayfs driver and `mount -t fuse.layerfs-overlay`. See package
// overlaycmd and docs/layerfs-overlay.md.
package main

import (
	"os"

	"github.com/layerfs/layerfs/overlaycmd"
)

func main() {
	os.Exit(overlaycmd.Main(os.Args[1:], os.Stderr))
}
