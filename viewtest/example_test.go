package viewtest_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/graph"
	"github.com/layerfs/layerfs/viewtest"
)

// A test of a tool that edits a root file system: it gets a fresh view of
// the image, runs the tool in it, checks what changed, and commits the
// result as a new image. The view is unmounted and removed when the test
// ends, passed or failed.
func ExampleNew() {
	testConfigure := func(t *testing.T, store *graph.Store) {
		v := viewtest.New(t, viewtest.Image(store, "demo:1"))
		t.Logf("view at %s, %s driver (%s)", v.Path, v.Driver, v.Why)

		// The tool under test writes into the view.
		if err := os.WriteFile(filepath.Join(v.Path, "etc/hostname"), []byte("configured\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		list, err := v.Diff(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		changed := false
		for _, c := range list { // "C /etc", "C /etc/hostname"
			changed = changed || c.String() == "C /etc/hostname"
		}
		if !changed {
			t.Errorf("changes %v lack C /etc/hostname", list)
		}
		layer, err := v.Commit(context.Background(), graph.CommitOptions{Name: "demo:configured"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("committed %s", layer.ChainID)
	}
	// Plain directories work too, forced onto the union:
	testPlain := func(t *testing.T) {
		v := viewtest.New(t, viewtest.Dirs("testdata/base"), viewtest.Driver(viewtest.Fuse))
		_ = v.Upper() // where the changes land
	}
	_, _ = testConfigure, testPlain
}
