package fusefs

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestHardlinksUnderRedirect runs scripts that rename directories holding
// names of a lower hardlink group and then change the group, on kernel
// overlayfs with index=on and redirect_dir=on (the oracle) and on the
// union; "remount" unmounts both and mounts them again, so the union must
// find directories an earlier mount renamed. Both views must show the same
// tree (content, inode groups, link counts), and kernel overlayfs reading
// only the union's upper (no index) the same content and inode groups.
func TestHardlinksUnderRedirect(t *testing.T) {
	testutil.NeedRootOnly(t, "kernel overlayfs with index=on as the oracle")
	needFuse(t)
	for _, tc := range []struct {
		name  string
		steps []string
	}{
		{"change through another name", []string{"mv d d2", "echo new >> e/c"}},
		{"change through a moved name", []string{"mv d d2", "echo new >> d2/a"}},
		{"renamed before a remount", []string{"mv d d2", "remount", "echo new >> e/c"}},
		{"moved name then remount then another name", []string{"mv d d2", "remount", "echo new >> d2/b"}},
		{"renamed twice", []string{"mv d d2", "mv d2 d3", "remount", "echo new >> e/c"}},
		{"nested renames", []string{"mv d/s d/s2", "mv d d2", "remount", "echo new >> e/c"}},
		{"rename into a renamed dir", []string{"mv e e2", "mkdir f", "mv d f/d", "remount", "echo new >> e2/c"}},
		{"link and unlink after", []string{"mv d d2", "echo new >> e/c", "ln d2/a d2/l", "rm d2/b", "remount", "echo more >> d2/l"}},
		{"chmod through a moved name", []string{"mv d d2", "remount", "chmod 600 d2/s/x"}},
		{"a name moved out of a renamed dir", []string{"mv d d2", "mv d2/b e/b2", "remount", "echo new >> e/c"}},
		{"renamed back", []string{"mv d d2", "mv d2 d", "remount", "echo new >> e/c"}},
		{"part of a renamed dir removed", []string{"mv d d2", "rm -r d2/s", "echo new >> e/c"}},
		{"a renamed dir in a renamed dir", []string{"mv d/s e/s", "mv e e2", "remount", "echo new >> d/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) { runRedirectScript(t, tc.steps) })
	}
}

func runRedirectScript(t *testing.T, steps []string) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	mustWrite(t, filepath.Join(src, "d/a"), "old\n")
	mustWrite(t, filepath.Join(src, "d/s/x"), "x\n")
	mustMkdir(t, filepath.Join(src, "e"))
	for _, l := range []string{"d/b", "e/c", "d/s/y"} {
		if err := os.Link(filepath.Join(src, "d/a"), filepath.Join(src, l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(src, "d/s/x"), filepath.Join(src, "e/x2")); err != nil {
		t.Fatal(err)
	}
	kl, ul := filepath.Join(base, "kl"), filepath.Join(base, "ul")
	copyTree(t, src, kl)
	copyTree(t, src, ul)
	dir := func(n string) string {
		p := filepath.Join(base, n)
		mustMkdir(t, p)
		return p
	}
	kup, kwork, kmnt := dir("kup"), dir("kwork"), dir("kmnt")
	uup, uwork, umnt := dir("uup"), dir("uwork"), dir("umnt")
	kopts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=on,redirect_dir=on", kl, kup, kwork)
	uopts := Options{Lowers: []string{ul}, Upper: uup, Work: uwork, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var srv *Server
	mount := func() {
		if err := unix.Mount("overlay", kmnt, "overlay", 0, kopts); err != nil {
			t.Fatalf("kernel overlay: %v", err)
		}
		var err error
		if srv, err = Mount(umnt, uopts); err != nil {
			t.Fatalf("union: %v", err)
		}
	}
	unmount := func() {
		if err := unix.Unmount(kmnt, 0); err != nil {
			unix.Unmount(kmnt, unix.MNT_DETACH)
		}
		if srv != nil {
			if srv.Unmount() != nil {
				unix.Unmount(umnt, unix.MNT_DETACH)
			}
			srv = nil
		}
	}
	mount()
	t.Cleanup(unmount)
	start := time.Now().Add(-time.Minute)
	var log []string
	for _, s := range steps {
		if s == "remount" {
			unmount()
			mount()
			log = append(log, s)
			continue
		}
		ko, ke := shellIn(kmnt, s)
		uo, ue := shellIn(umnt, s)
		log = append(log, fmt.Sprintf("%s: kernel %v union %v", s, ke, ue))
		if (ke == nil) != (ue == nil) {
			t.Fatalf("%s: kernel %v %s, union %v %s", s, ke, ko, ue, uo)
		}
	}
	if diff := compareTrees(kmnt, umnt, start); diff != "" {
		t.Fatalf("kernel (index=on) and union differ after\n%s\n\n%s", strings.Join(log, "\n"), diff)
	}
	if diff := compareNlinks(kmnt, umnt); diff != "" {
		t.Errorf("link counts differ after\n%s\n\n%s", strings.Join(log, "\n"), diff)
	}
	// Kernel overlayfs over the union's upper, without an index: the
	// upper alone must describe the view.
	unmount()
	kmnt2, kwork2 := dir("kmnt2"), dir("kwork2")
	if err := unix.Mount("overlay", kmnt2, "overlay", unix.MS_RDONLY, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,index=off", ul, uup, kwork2)); err != nil {
		t.Fatalf("kernel overlay over the union's upper: %v", err)
	}
	defer unix.Unmount(kmnt2, unix.MNT_DETACH)
	mount()
	if diff := compareTrees(umnt, kmnt2, start); diff != "" {
		t.Errorf("kernel overlayfs reads the union's upper differently after\n%s\n\n%s", strings.Join(log, "\n"), diff)
	}
	// (Not st_nlink: without an index the kernel shows a lower-only
	// object's own count, names the view hides included.)
}

func shellIn(dir, script string) (string, error) {
	cmd := commandIn(dir, "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// compareNlinks reports the paths whose st_nlink differ.
func compareNlinks(a, b string) string {
	counts := func(root string) map[string]uint64 {
		m := map[string]uint64{}
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				rel, _ := filepath.Rel(root, p)
				var st unix.Stat_t
				unix.Lstat(p, &st)
				m[rel] = st.Nlink
			}
			return nil
		})
		return m
	}
	ca, cb := counts(a), counts(b)
	var diffs []string
	for p, n := range ca {
		if cb[p] != n {
			diffs = append(diffs, fmt.Sprintf("%s: %d vs %d", p, n, cb[p]))
		}
	}
	return strings.Join(diffs, "\n")
}
