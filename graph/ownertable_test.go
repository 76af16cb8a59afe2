package graph

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
)

// TestRootlessStoreKeepsSpecialOwners: a rootless layer keeps the owners
// and modes (the tar's: imagegen gives symlinks 0644) of its symlinks and
// FIFOs in its special-owners table, staged with it; views and read-only
// mounts name every table; check reports a table that does not match its
// layer.
func TestRootlessStoreKeepsSpecialOwners(t *testing.T) {
	ctx := context.Background()
	rootless := true
	s, err := Open(ctx, filepath.Join(t.TempDir(), "store"), Options{Rootless: &rootless})
	if err != nil {
		t.Fatal(err)
	}
	sample, _ := imagegen.SampleLayers()
	base, _, err := s.Register(ctx, bytes.NewReader(sample[0]), RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	change, _, err := s.Register(ctx, bytes.NewReader(sample[1]), RegisterOptions{Parent: base.ChainID.String()})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(s.DiffDir(base.ChainID)), ownertable.FileName); s.OwnerTable(base.ChainID) != want {
		t.Errorf("OwnerTable = %s, want %s beside the diff dir", s.OwnerTable(base.ChainID), want)
	}
	tab, _, err := ownertable.ReadFile(s.OwnerTable(base.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for p, rec := range tab {
		got[p] = statoverride.Format(rec)
	}
	if want := map[string]string{"bin/sh": "0:0:0644:symlink", "run/initctl": "0:0:0600:pipe"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("base layer's table %v, want %v", got, want)
	}
	if _, err := os.Stat(s.OwnerTable(change.ChainID)); !os.IsNotExist(err) {
		t.Errorf("a layer without symlinks or FIFOs has a table: %v", err)
	}

	v, err := s.CreateView(ctx, change.ChainID.String(), CreateViewOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Dirs(v)
	if err != nil {
		t.Fatal(err)
	}
	wantTables := []string{s.OwnerTable(change.ChainID), s.OwnerTable(base.ChainID)}
	if fmt.Sprint(d.LowerOwnerTables) != fmt.Sprint(wantTables) || len(d.Lowers) != 2 {
		t.Errorf("view lower tables %v, want %v", d.LowerOwnerTables, wantTables)
	}
	if filepath.Dir(d.UpperOwnerTable) != d.Work {
		t.Errorf("upper table %s is not in the work dir %s (a view reset must drop it)", d.UpperOwnerTable, d.Work)
	}
	ro := d.ReadOnly()
	if ro.Upper != "" || ro.Lowers[0] != d.Upper || ro.LowerOwnerTables[0] != d.UpperOwnerTable || len(ro.LowerOwnerTables) != 3 {
		t.Errorf("read-only dirs %+v", ro)
	}
	ld, err := s.LayerDirs(change.ChainID)
	if err != nil || fmt.Sprint(ld.LowerOwnerTables) != fmt.Sprint(wantTables) {
		t.Errorf("LayerDirs = %+v, %v", ld, err)
	}

	if problems, err := s.Check(ctx, nil); err != nil || len(problems) != 0 {
		t.Fatalf("Check of a fresh rootless store: %v, %v", problems, err)
	}
	for _, tc := range []struct {
		name, table, want string
	}{
		{"missing path", "\"bin/gone\" 0:0:0777:symlink\n", "lacks"},
		{"through a symlink", "\"bin/sh/x\" 0:0:0777:symlink\n", "lacks"},
		{"a file, not a special", "\"etc/hostname\" 0:0:0644:pipe\n", "not a symlink, FIFO or socket"},
		{"another type", "\"bin/sh\" 0:0:0600:pipe\n", "records \"bin/sh\" as 0:0:0600:pipe"},
		{"unparsable", "bin/sh 0:0\n", "line 1"},
		{"torn", "\"bin/sh\" 0:0:0777:symlink\n\"run/ini", "ends inside a line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(s.OwnerTable(base.ChainID), []byte(tc.table), 0o600); err != nil {
				t.Fatal(err)
			}
			problems, err := s.Check(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) != 1 || problems[0].Kind != ProblemOwnerTable || problems[0].ID != base.ChainID.String() ||
				!strings.Contains(problems[0].Detail, tc.want) {
				t.Fatalf("Check = %v, want one %s problem of %s saying %q", problems, ProblemOwnerTable, base.ChainID, tc.want)
			}
		})
	}
}

// TestRootStoreHasNoOwnerTables: root gives objects their owners.
func TestRootStoreHasNoOwnerTables(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a store made by a plain user is rootless")
	}
	s := newStore(t)
	sample, _ := imagegen.SampleLayers()
	base, _, err := s.Register(context.Background(), bytes.NewReader(sample[0]), RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.OwnerTable(base.ChainID)); !os.IsNotExist(err) {
		t.Errorf("root's layer has a special-owners table: %v", err)
	}
}
