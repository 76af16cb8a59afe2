package changes

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/statoverride"
)

// TestReadXattrsKeptCapability: a capability a rootless store kept goes
// into the layer as security.capability; a real one wins; the kept name
// and the override record never go in.
func TestReadXattrsKeptCapability(t *testing.T) {
	capA := string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	capB := string([]byte{1, 0, 0, 2, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	for _, tc := range []struct {
		name   string
		xattrs map[string]string
		root   bool
		want   map[string]string
	}{
		{"kept only", map[string]string{statoverride.CapabilityXattr: capA, statoverride.Xattr: "0:0:0755", "user.k": "v"}, false,
			map[string]string{statoverride.SecurityCapability: capA, "user.k": "v"}},
		{"real wins", map[string]string{statoverride.CapabilityXattr: capA, statoverride.SecurityCapability: capB}, true,
			map[string]string{statoverride.SecurityCapability: capB}},
		{"none", map[string]string{"user.k": "v"}, false, map[string]string{"user.k": "v"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				testutil.NeedRoot(t)
			}
			p := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(p, []byte("x"), 0o755); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.xattrs {
				if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
					t.Fatalf("setxattr %s: %v", k, err)
				}
			}
			got, err := readXattrs(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q (all: %q)", k, got[k], v, got)
				}
			}
		})
	}
}
