package overlaycmd

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/kernel/overlay"
	"github.com/layerfs/layerfs/overlayopts"
)

// layerfs-overlay driver=kernel mounts with the options of a `layerfs
// mount` view: index=on goes with nfs_export=off, so a module default of
// nfs_export=Y cannot make the kernel index every copy-up.
func TestOverlayKernelOptions(t *testing.T) {
	userns := overlay.InUserNamespace()
	tests := []struct {
		name string
		opts string
		// want: the feature options, outside a user namespace.
		want     []string
		readOnly bool
	}{
		{"upper", "lowerdir=/l1:/l2,upperdir=/u,workdir=/w", []string{"redirect_dir=on", "index=on", "nfs_export=off"}, false},
		{"mount options after", "lowerdir=/l,upperdir=/u,workdir=/w,noatime,nodev", []string{"redirect_dir=on", "index=on", "nfs_export=off", "noatime", "nodev"}, false},
		{"volatile", "lowerdir=/l,upperdir=/u,workdir=/w,volatile", []string{"redirect_dir=on", "index=on", "nfs_export=off", "volatile"}, false},
		{"read-only upper", "lowerdir=/l,upperdir=/u,workdir=/w,ro", []string{"redirect_dir=on", "index=on", "nfs_export=off"}, true},
		{"lowers only", "lowerdir=/l1:/l2", []string{"redirect_dir=on"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := overlayopts.Parse([]string{"-o", tt.opts + ",driver=kernel", "/mnt"})
			if err != nil {
				t.Fatal(err)
			}
			ko := kernelOptions(c)
			got := features(ko)
			want := tt.want
			if userns {
				// The kernel refuses redirect_dir and the index with
				// userxattr: ViewOptions asks for neither.
				want = []string{"userxattr"}
				for _, o := range tt.want {
					if o != "redirect_dir=on" && o != "index=on" && o != "nfs_export=off" {
						want = append(want, o)
					}
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("options %q, want %q", got, want)
			}
			if ro := ko.ReadOnly || ko.Upper == ""; ro != tt.readOnly {
				t.Errorf("read-only %v, want %v", ro, tt.readOnly)
			}
		})
	}
}

// features lists the option string's feature part in the order Mount
// hands it to the kernel (kernel/overlay makePlan).
func features(o overlay.Options) []string {
	var out []string
	if o.UserXattr {
		out = append(out, "userxattr")
	}
	if o.RedirectDir {
		out = append(out, "redirect_dir=on")
	}
	if o.Index {
		out = append(out, "index=on")
	}
	return append(out, o.ExtraOptions...)
}

// The options layerfs-overlay driver=kernel hands to the kernel, as the
// kernel mount reports them.
func TestOverlayKernelMountOptions(t *testing.T) {
	testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
	dir := t.TempDir()
	for _, d := range []string{"l1", "l2", "u", "w", "mnt"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := func(d string) string { return filepath.Join(dir, d) }
	c, err := overlayopts.Parse([]string{"-o", "lowerdir=" + p("l1") + ":" + p("l2") + ",upperdir=" + p("u") + ",workdir=" + p("w") + ",driver=kernel", p("mnt")})
	if err != nil {
		t.Fatal(err)
	}
	res, err := overlay.MountView(c.Mountpoint, kernelOptions(c))
	if err != nil {
		testutil.Need(t, false, "kernel overlayfs: "+err.Error())
	}
	t.Cleanup(func() { overlay.Unmount(c.Mountpoint, true) })
	if got := strings.Join(res.Options, ","); got != "redirect_dir=on,index=on,nfs_export=off" {
		t.Errorf("options given to the kernel %q, want redirect_dir=on,index=on,nfs_export=off", got)
	}
	for _, want := range []string{"redirect_dir=on", "index=on"} {
		if !slices.Contains(res.SuperOptions, want) {
			t.Errorf("the kernel reports %q, without %s", res.SuperOptions, want)
		}
	}
	if slices.Contains(res.SuperOptions, "nfs_export=on") {
		t.Errorf("the kernel reports %q: nfs_export is on", res.SuperOptions)
	}
}
