package fusefs

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
)

func TestPresentCapability(t *testing.T) {
	kept, real := statoverride.CapabilityXattr, statoverride.SecurityCapability
	for _, tc := range []struct {
		in, want []string
	}{
		{nil, nil},
		{[]string{"user.a"}, []string{"user.a"}},
		{[]string{"user.a", kept}, []string{"user.a", real}},
		{[]string{kept, real}, []string{kept, real}}, // the real one wins; the kept name is filtered as private
		{[]string{real}, []string{real}},
	} {
		in := slices.Clone(tc.in)
		if got := presentCapability(in); !slices.Equal(got, tc.want) {
			t.Errorf("presentCapability(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("presentCapability changed its argument to %q", in)
		}
	}
}

// TestKeptCapability: a lower file whose capability a rootless store kept
// under the user.* name shows security.capability (and not the kept name)
// in the view, before and after copy-up, and the kept name cannot be set
// through the view.
func TestKeptCapability(t *testing.T) {
	capV2 := string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	lowers, upper, work := layerDirs(t, 1)
	ping := filepath.Join(lowers[0], "ping")
	mustWrite(t, ping, "#!/bin/sh\n")
	if err := unix.Lsetxattr(ping, statoverride.CapabilityXattr, []byte(capV2), 0); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(lowers[0], "plain"), "x")
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	p := filepath.Join(mnt, "ping")
	check := func(when string) {
		t.Helper()
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(p, statoverride.SecurityCapability, buf)
		if err != nil || string(buf[:n]) != capV2 {
			t.Errorf("%s: security.capability = %q, %v; want the kept value", when, buf[:max(n, 0)], err)
		}
		if _, err := unix.Lgetxattr(p, statoverride.CapabilityXattr, buf); !errors.Is(err, unix.ENODATA) {
			t.Errorf("%s: the kept name answers %v, want ENODATA", when, err)
		}
		lb := make([]byte, 1024)
		ln, err := unix.Llistxattr(p, lb)
		if err != nil {
			t.Fatal(err)
		}
		names := strings.Split(strings.TrimRight(string(lb[:ln]), "\x00"), "\x00")
		if !slices.Contains(names, statoverride.SecurityCapability) || slices.Contains(names, statoverride.CapabilityXattr) {
			t.Errorf("%s: listxattr = %q, want security.capability and not the kept name", when, names)
		}
	}
	check("lower")
	if _, err := unix.Lgetxattr(filepath.Join(mnt, "plain"), statoverride.SecurityCapability, make([]byte, 64)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("plain: security.capability answers %v, want ENODATA", err)
	}
	if err := unix.Lsetxattr(filepath.Join(mnt, "plain"), statoverride.CapabilityXattr, []byte(capV2), 0); err == nil {
		t.Error("the kept name was set through the view")
	}
	if err := os.Chmod(p, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(upper, "ping")); err != nil {
		t.Fatalf("no copy-up: %v", err)
	}
	check("after copy-up")
	// Writing drops a file's capability, as on any filesystem: the kernel
	// removes security.capability, which is the kept one here.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.WriteString("echo changed\n")
	f.Close() // before any Fatal: an open file of our own mount blocks exit
	if werr != nil {
		t.Fatalf("write to a file with a kept capability: %v", werr)
	}
	if _, err := unix.Lgetxattr(p, statoverride.SecurityCapability, make([]byte, 64)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("after a write security.capability answers %v, want ENODATA", err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(upper, "ping"), statoverride.CapabilityXattr, make([]byte, 64)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("after a write the upper keeps the capability: %v", err)
	}
}
