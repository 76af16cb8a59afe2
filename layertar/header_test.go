package layertar

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os/exec"
	"reflect"
	"testing"
	"time"
)

// headerBlocks returns the first header block of tars written by
// archive/tar in each format, and by GNU tar (when installed) of the
// tree in gnuDir unless it is empty.
func headerBlocks(t testing.TB, gnuDir string) [][]byte {
	var blocks [][]byte
	mt := time.Unix(1_700_000_000, 0)
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatGNU, tar.FormatPAX} {
		for _, h := range []tar.Header{
			{Typeflag: tar.TypeReg, Name: "dir/file.txt", Mode: 0o644, Uid: 1000, Gid: 100, Uname: "user", Gname: "users", Size: 5, ModTime: mt},
			{Typeflag: tar.TypeDir, Name: "dir/", Mode: 0o2755, ModTime: mt},
			{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "dir/file.txt", Mode: 0o777, ModTime: mt},
			{Typeflag: tar.TypeLink, Name: "hard", Linkname: "dir/file.txt", ModTime: mt},
			{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3, ModTime: mt},
			{Typeflag: tar.TypeReg, Name: "a/very/long/prefix/that/needs/the/ustar/prefix/field/to/be/stored/because/it/is/more/than/a/hundred/bytes/long/file", ModTime: mt},
		} {
			h.Format = format
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			if err := tw.WriteHeader(&h); err != nil {
				continue // not representable in this format
			}
			blocks = append(blocks, buf.Bytes()[:blockSize])
		}
	}
	if _, err := exec.LookPath("tar"); err == nil && gnuDir != "" {
		for _, format := range []string{"--format=gnu", "--format=ustar", "--format=oldgnu"} {
			out, err := exec.Command("tar", "-C", gnuDir, "-cf", "-", format, "--exclude=long-name-*", "--exclude=sparse", ".").Output()
			if err != nil {
				t.Fatalf("tar %s: %v", format, err)
			}
			blocks = append(blocks, out[:blockSize])
		}
	}
	return blocks
}

// parseWithArchiveTar is archive/tar's reading of a header block.
func parseWithArchiveTar(block []byte) (*tar.Header, error) {
	data := append(bytes.Clone(block), make([]byte, 1<<16)...)
	return tar.NewReader(bytes.NewReader(data)).Next()
}

func TestParseHeaderMatchesArchiveTar(t *testing.T) {
	accepted := 0
	for i, block := range headerBlocks(t, makeTree(t)) {
		var b [blockSize]byte
		copy(b[:], block)
		got, ok := parseHeader(&b)
		if !ok {
			continue
		}
		accepted++
		want, err := parseWithArchiveTar(block)
		if err != nil {
			t.Fatalf("block %d: parseHeader accepted what archive/tar refuses: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("block %d:\nparseHeader %+v\narchive/tar %+v", i, got, want)
		}
	}
	if accepted < 8 {
		t.Fatalf("parseHeader accepted only %d of the plain headers", accepted)
	}
}

// FuzzParseHeader: whatever block parseHeader accepts, archive/tar reads
// to the same Header.
func FuzzParseHeader(f *testing.F) {
	for _, b := range headerBlocks(f, "") {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, block []byte, fixSum bool) {
		var b [blockSize]byte
		copy(b[:], block)
		if fixSum {
			// Most mutations break the checksum; mend it so that the
			// fields behind it get explored.
			copy(b[148:156], fmt.Sprintf("%06o\x00 ", checksum(&b)))
		}
		got, ok := parseHeader(&b)
		if !ok {
			return
		}
		want, err := parseWithArchiveTar(b[:])
		if err != nil {
			t.Fatalf("parseHeader accepted what archive/tar refuses: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("parseHeader %+v\narchive/tar %+v", got, want)
		}
	})
}

func TestChecksumASCII(t *testing.T) {
	var b [blockSize]byte
	for i := range b {
		b[i] = byte(i*131 + 7)
	}
	var want int64
	ascii := true
	for i, c := range b {
		if i >= 148 && i < 156 {
			c = ' '
		}
		want += int64(c)
		if b[i] >= 0x80 {
			ascii = false
		}
	}
	if got, gotASCII := checksumASCII(&b); got != want || gotASCII != ascii {
		t.Fatalf("checksumASCII = %d, %v; want %d, %v", got, gotASCII, want, ascii)
	}
	for i := range b {
		b[i] = 0xff
	}
	if got, _ := checksumASCII(&b); got != 504*0xff+8*' ' {
		t.Fatalf("checksum of an all-0xff block = %d", got)
	}
	for i := range b {
		b[i] &= 0x7f
	}
	if _, a := checksumASCII(&b); !a {
		t.Fatal("an ASCII block is not ASCII")
	}
}
