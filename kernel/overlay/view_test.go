package overlay

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestViewOptions(t *testing.T) {
	lowers := []string{"/l1", "/l0"}
	tests := []struct {
		name        string
		upper, work string
		userXattr   bool
		redirect    bool
		index       bool
		extra       []string
	}{
		{name: "privileged", upper: "/u", work: "/w", redirect: true, index: true, extra: []string{"nfs_export=off"}},
		{name: "user namespace", upper: "/u", work: "/w", userXattr: true},
		{name: "read-only", redirect: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ViewOptions(lowers, tt.upper, tt.work, tt.userXattr)
			if o.RedirectDir != tt.redirect || o.Index != tt.index || o.UserXattr != tt.userXattr || !slices.Equal(o.ExtraOptions, tt.extra) {
				t.Errorf("got redirect %v index %v userxattr %v extra %q; want %v %v %v %q",
					o.RedirectDir, o.Index, o.UserXattr, o.ExtraOptions, tt.redirect, tt.index, tt.userXattr, tt.extra)
			}
			if !slices.Equal(o.Lowers, lowers) || o.Upper != tt.upper || o.Work != tt.work {
				t.Errorf("dirs %v %q %q", o.Lowers, o.Upper, o.Work)
			}
		})
	}
}

// An upper indexed on one stack is refused with index=on on another (the
// kernel checks the lower root it recorded); MountView then mounts it
// without the index and says so.
func TestMountViewFallsBackWithoutIndex(t *testing.T) {
	testutil.NeedRootOnly(t, "kernel overlayfs with index=on")
	dir := t.TempDir()
	a, b := mkdirs(t, dir, "a"), mkdirs(t, dir, "b")
	writeFile(t, filepath.Join(b, "f"), "b")
	upper, work, mnt := mkdirs(t, dir, "u"), mkdirs(t, dir, "w"), mkdirs(t, dir, "m")

	res, err := MountView(mnt, ViewOptions([]string{a}, upper, work, false))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"index=on", "redirect_dir=on"} {
		if !slices.Contains(res.SuperOptions, want) {
			t.Errorf("options %q lack %s", res.SuperOptions, want)
		}
	}
	if len(res.Dropped) != 0 {
		t.Errorf("dropped %v on a fresh upper", res.Dropped)
	}
	if err := Unmount(mnt, false); err != nil {
		t.Fatal(err)
	}

	opts := ViewOptions([]string{b}, upper, work, false)
	if _, err := Mount(mnt, opts); err == nil {
		Unmount(mnt, true)
		t.Fatal("the kernel took an upper indexed on another lower with index=on: nothing to fall back from")
	}
	res = mountViewT(t, mnt, opts)
	if slices.Contains(res.SuperOptions, "index=on") {
		t.Errorf("fallback mount still has index=on: %q", res.SuperOptions)
	}
	if len(res.Dropped) != 1 || res.Dropped[0].Feature != "index=on" {
		t.Errorf("dropped %v, want index=on", res.Dropped)
	}
	if got := readFile(t, filepath.Join(mnt, "f")); got != "b" {
		t.Errorf("fallback mount shows %q", got)
	}
}

func mountViewT(t testing.TB, target string, opts Options) *Result {
	t.Helper()
	res, err := MountView(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unmount(target, true) })
	return res
}
