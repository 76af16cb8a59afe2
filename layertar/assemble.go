package layertar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/asynchash"
	"github.com/layerfs/layerfs/layertar/internal/crc64iso"
)

// AssembleOptions tune Assemble.
type AssembleOptions struct {
	// VerifyPayloads checks every file payload against the crc64 in the
	// record. The sha256 of the whole stream is the real check; this one
	// names the file that differs, at a cost of a second hash of all data.
	VerifyPayloads bool
}

// FileOpener opens, read-only, the applied file that holds the payload of
// the tar entry name, and returns its descriptor, which Assemble closes.
// It must not follow symlinks out of the layer.
type FileOpener func(name string) (fd int, err error)

// Assemble writes the original tar to w from the tar-split record up and
// the layer's files, and returns the sha256 of what it wrote, for the
// caller to check against the diffID.
//
// The stream is built in chunks that file contents are read straight
// into; each chunk is written to w and then hashed on another goroutine
// without a copy. w sees writes of up to asynchash.ChunkSize bytes.
func Assemble(ctx context.Context, up storage.Unpacker, open FileOpener, w io.Writer, opts AssembleOptions) (digest.Digest, error) {
	h := asynchash.New(sha256.New())
	defer h.Close()
	a := assembler{w: w, h: h, open: open, verify: opts.VerifyPayloads}
	a.out = h.Take()
	if err := a.run(ctx, up); err != nil {
		return "", err
	}
	if err := a.flush(false); err != nil {
		return "", err
	}
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum()), nil
}

type assembler struct {
	w    io.Writer
	h    *asynchash.Hasher
	out  []byte // the chunk being filled, taken from h
	open FileOpener
	pos  int64
	// header collects the raw bytes since the last payload: the entry's
	// headers, which hold a sparse file's map.
	header      bytes.Buffer
	headerStart int64
	verify      bool
	crc         uint64
}

func (a *assembler) run(ctx context.Context, up storage.Unpacker) error {
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
			if err := a.emit(e.Payload); err != nil {
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

// emit appends raw bytes to the stream.
func (a *assembler) emit(p []byte) error {
	for len(p) > 0 {
		if len(a.out) == cap(a.out) {
			if err := a.flush(true); err != nil {
				return err
			}
		}
		n := copy(a.out[len(a.out):cap(a.out)], p)
		a.out = a.out[:len(a.out)+n]
		a.pos += int64(n)
		p = p[n:]
	}
	return nil
}

// flush writes the current chunk, hands it to the hasher, and with more
// takes the next one.
func (a *assembler) flush(more bool) error {
	var err error
	if len(a.out) > 0 {
		_, err = a.w.Write(a.out)
		a.h.Give(a.out)
		a.out = nil
		if more {
			a.out = a.h.Take()
		}
	}
	return err
}

func (a *assembler) payload(e *storage.Entry) error {
	name := e.GetName()
	frags, sparse, err := ParseSparse(a.header.Bytes(), a.headerStart)
	if err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	fd, err := a.open(name)
	if err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	defer unix.Close(fd)
	a.crc = 0
	var total int64
	if sparse {
		for _, fr := range frags {
			n, err := a.copyRange(fd, fr.Offset, fr.Length, false)
			total += n
			if err != nil {
				return fmt.Errorf("export %s: %w", name, err)
			}
		}
	} else {
		// One byte more than the record holds is asked for: a file grown
		// behind the store's back would still export its first Size bytes
		// correctly; say so rather than hide it. No fstat is needed.
		total, err = a.copyRange(fd, 0, e.Size, true)
		if err != nil {
			return fmt.Errorf("export %s: %w", name, err)
		}
		if total > e.Size {
			return fmt.Errorf("export %s: layer file is larger than the %d bytes the record says (file changed behind the store's back?)", name, e.Size)
		}
	}
	if total != e.Size {
		return fmt.Errorf("export %s: layer file holds %d bytes of payload, the record %d (file changed behind the store's back?)", name, total, e.Size)
	}
	if a.verify && !bytes.Equal(binary.BigEndian.AppendUint64(nil, a.crc), e.Payload) {
		return fmt.Errorf("export %s: content checksum differs from the record (file changed behind the store's back?)", name)
	}
	return nil
}

// minRead is the smallest read worth its system call: with less room left
// in the chunk (and more to read), the chunk is flushed first.
const minRead = 64 << 10

// copyRange appends length bytes of fd from off to the stream, reading
// them straight into the chunk, and returns how many it found. With probe
// it asks for one byte more and stops at the end of the file; a count
// over length says the file is longer (that byte is not emitted).
func (a *assembler) copyRange(fd int, off, length int64, probe bool) (int64, error) {
	var done int64
	for {
		want := length - done
		if probe {
			want++
		}
		if want <= 0 {
			return done, nil
		}
		room := int64(cap(a.out) - len(a.out))
		if room == 0 || room < want && room < minRead {
			if err := a.flush(true); err != nil {
				return done, err
			}
			room = int64(cap(a.out) - len(a.out))
		}
		req := min(want, room)
		n, err := unix.Pread(fd, a.out[len(a.out):len(a.out)+int(req)], off+done)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, nil
		}
		if probe && done+int64(n) > length {
			return done + int64(n), nil
		}
		got := a.out[len(a.out) : len(a.out)+n]
		if a.verify {
			a.crc = crc64iso.Update(a.crc, got)
		}
		a.out = a.out[:len(a.out)+n]
		a.pos += int64(n)
		done += int64(n)
		// A regular file reads short only at its end.
		if probe && done == length && int64(n) < req {
			return done, nil
		}
	}
}
