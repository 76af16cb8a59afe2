package layertar

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/vbatts/tar-split/tar/storage"
)

// FuzzSplitAssemble checks the property the store rests on: any stream the
// splitter accepts reassembles to exactly the same bytes.
func FuzzSplitAssemble(f *testing.F) {
	for _, seed := range seedTars(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		var meta bytes.Buffer
		sp := NewSplitter(bytes.NewReader(data), NewRecordWriter(&meta))
		// Payloads go to files named by entry number: names in fuzzed
		// input may be anything.
		names := map[string]string{}
		var duplicate string
		for i := 0; ; i++ {
			hdr, err := sp.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return // rejected input: nothing to reassemble
			}
			if hdr.Size > 1<<20 {
				return // keep executions fast; sizes are not the point here
			}
			p := filepath.Join(dir, strconv.Itoa(i))
			fh, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := copyContent(fh, sp, i%2 == 0); err != nil {
				fh.Close()
				return
			}
			fh.Close()
			// The record is packed on a worker goroutine, so a duplicate
			// is refused when the stream ends, not at its second Next.
			if _, dup := names[hdr.Name]; dup && duplicate == "" {
				duplicate = hdr.Name
			}
			names[hdr.Name] = p
		}
		if duplicate != "" {
			t.Fatalf("stream with duplicate name %q accepted by the splitter", duplicate)
		}
		// The record reads the same with tar-split's own unpacker.
		for _, up := range []storage.Unpacker{NewRecordReader(bytes.NewReader(meta.Bytes())), storage.NewJSONUnpacker(bytes.NewReader(meta.Bytes()))} {
			var out bytes.Buffer
			open := func(name string) (int, error) { return openRead(names[name]) }
			if _, err := Assemble(context.Background(), up, open, &out, AssembleOptions{VerifyPayloads: true}); err != nil {
				t.Fatalf("accepted stream does not reassemble: %v", err)
			}
			if !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("reassembled %d bytes differ from the %d accepted", out.Len(), len(data))
			}
		}
	})
}

func seedTars(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, format := range []tar.Format{tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755, Format: format})
		tw.WriteHeader(&tar.Header{Name: "d/f", Mode: 0o644, Size: 5, Format: format})
		tw.Write([]byte("hello"))
		tw.WriteHeader(&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "d/f", Format: format})
		tw.Close()
		seeds = append(seeds, buf.Bytes())
	}
	// A GNU sparse file in PAX 0.1 form, hand-built: archive/tar no
	// longer writes sparse files.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "s", Mode: 0o644, Size: 4, Format: tar.FormatPAX, PAXRecords: map[string]string{
		"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.map": "0,2,1000,2", "GNU.sparse.size": "1002", "GNU.sparse.name": "s",
	}})
	tw.Write([]byte("abcd"))
	tw.Close()
	seeds = append(seeds, buf.Bytes())
	return seeds
}
