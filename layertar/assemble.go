package layertar

import (
	"bytes"
	"context"
	"fmt"
	"hash"
	"hash/crc64"
	"io"
	"os"

	"github.com/vbatts/tar-split/tar/storage"
)

// AssembleOptions tune Assemble.
type AssembleOptions struct {
	// VerifyPayloads checks every file payload against the crc64 in the
	// record. The sha256 of the whole stream is the real check; this one
	// names the file that differs, at a cost of a second hash of all data.
	VerifyPayloads bool
}

// FileOpener opens the applied file that holds the payload of the tar entry
// name. It must not follow symlinks out of the layer.
type FileOpener func(name string) (*os.File, error)

// Assemble writes the original tar to w from the tar-split record up and
// the layer's files. Every payload is checked against its recorded crc64;
// the caller checks the sha256 of the whole stream against the diffID.
func Assemble(ctx context.Context, up storage.Unpacker, open FileOpener, w io.Writer, opts AssembleOptions) error {
	a := assembler{w: w, open: open, buf: make([]byte, 1<<20), verify: opts.VerifyPayloads, crc: crc64.New(storage.CRCTable)}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := up.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar-split record: %w", err)
		}
		switch e.Type {
		case storage.SegmentType:
			if a.header.Len() == 0 {
				a.headerStart = a.pos
			}
			a.header.Write(e.Payload)
			if err := a.write(e.Payload); err != nil {
				return err
			}
		case storage.FileType:
			if e.Size > 0 {
				if err := a.payload(e); err != nil {
					return err
				}
			}
			a.header.Reset()
		default:
			return fmt.Errorf("tar-split record: unknown entry type %d", e.Type)
		}
	}
}

type assembler struct {
	w    io.Writer
	open FileOpener
	pos  int64
	// header collects the raw bytes since the last payload: the entry's
	// headers, which hold a sparse file's map.
	header      bytes.Buffer
	headerStart int64
	buf         []byte
	verify      bool
	crc         hash.Hash64
}

func (a *assembler) write(p []byte) error {
	n, err := a.w.Write(p)
	a.pos += int64(n)
	return err
}

func (a *assembler) payload(e *storage.Entry) error {
	name := e.GetName()
	frags, sparse, err := ParseSparse(a.header.Bytes(), a.headerStart)
	if err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	if !sparse {
		frags = []Fragment{{0, e.Size}}
	}
	f, err := a.open(name)
	if err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	defer f.Close()
	if !sparse {
		// A file grown behind the store's back would still export its
		// first Size bytes correctly; say so rather than hide it.
		if st, err := f.Stat(); err != nil {
			return fmt.Errorf("export %s: %w", name, err)
		} else if st.Size() != e.Size {
			return fmt.Errorf("export %s: layer file is %d bytes, the record says %d (file changed behind the store's back?)", name, st.Size(), e.Size)
		}
	}
	a.crc.Reset()
	var total int64
	for _, fr := range frags {
		sec := io.NewSectionReader(f, fr.Offset, fr.Length)
		for {
			n, rerr := sec.Read(a.buf)
			if n > 0 {
				if a.verify {
					a.crc.Write(a.buf[:n])
				}
				total += int64(n)
				if err := a.write(a.buf[:n]); err != nil {
					return err
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return fmt.Errorf("export %s: %w", name, rerr)
			}
		}
	}
	if total != e.Size {
		return fmt.Errorf("export %s: layer file holds %d bytes of payload, the record %d (file changed behind the store's back?)", name, total, e.Size)
	}
	if a.verify && !bytes.Equal(a.crc.Sum(nil), e.Payload) {
		return fmt.Errorf("export %s: content checksum differs from the record (file changed behind the store's back?)", name)
	}
	return nil
}
