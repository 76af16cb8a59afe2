// Package layertar records a layer tar's bytes with vbatts/tar-split while
// the tar is applied, and reassembles the tar, bit for bit, from that record
// and the files of the applied layer.
//
// It writes tar-split's own metadata format (storage.Entry lines: raw
// segments and file entries with a crc64 of their payload), so the record
// reads with tar-split's tools, with one extension that tar-split lacks:
// sparse files. tar-split's own disassembler records a sparse entry's
// expanded content and so cannot reproduce the packed bytes. Here a file
// entry's Size and crc64 cover the bytes physically present in the archive
// (for a sparse file, its data fragments), and the fragment map is read
// back from the entry's raw header segment when the tar is reassembled.
package layertar

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/layerfs/layerfs/internal/asynchash"
)

// MaxSparseSize bounds the logical size of a sparse entry. Its holes cost
// no space but are read as zeros: a tar claiming petabytes of hole would
// keep an import busy for days.
const MaxSparseSize = 1 << 40

// recorder sits under the tar reader and sees every byte of the stream. It
// hashes all of them (the diffID) and either keeps them as a raw segment or,
// while an entry's payload is being read, only counts and checksums them.
type recorder struct {
	r io.Reader
	// digest runs on its own goroutine: hashing every byte of a layer
	// then overlaps the applier's I/O.
	digest    *asynchash.Hasher
	total     int64
	segment   bytes.Buffer
	inPayload bool
	crc       hash.Hash64
	payload   int64
}

func (rc *recorder) Read(p []byte) (int, error) {
	n, err := rc.r.Read(p)
	if n > 0 {
		data := p[:n]
		rc.digest.Write(data)
		rc.total += int64(n)
		if rc.inPayload {
			rc.crc.Write(data)
			rc.payload += int64(n)
		} else {
			rc.segment.Write(data)
		}
	}
	return n, err
}

// Splitter reads a tar stream entry by entry, like archive/tar's Reader,
// and records it into a tar-split packer as it goes. It satisfies the
// applier's Source interface.
type Splitter struct {
	rec    *recorder
	tr     *tar.Reader
	packer storage.Packer
	cur    *tar.Header
	// curFragments is the data map of the current entry when it is sparse.
	curFragments []Fragment
	done         bool
	diffID       digest.Digest
}

// NewSplitter wraps an uncompressed tar stream.
func NewSplitter(r io.Reader, packer storage.Packer) *Splitter {
	rec := &recorder{r: r, digest: asynchash.New(sha256.New()), crc: crc64.New(storage.CRCTable)}
	return &Splitter{rec: rec, tr: tar.NewReader(rec), packer: packer}
}

// Next finishes the current entry (reading what the caller left of its
// payload) and advances to the next one. It returns io.EOF after the last
// entry, once the whole stream, trailing padding included, was recorded.
func (s *Splitter) Next() (*tar.Header, error) {
	if s.done {
		return nil, io.EOF
	}
	if err := s.finishEntry(); err != nil {
		return nil, err
	}
	hdr, err := s.tr.Next()
	if errors.Is(err, io.EOF) {
		return nil, s.finishStream()
	}
	if err != nil {
		if s.cur != nil {
			return nil, fmt.Errorf("read tar header after %q: %w", s.cur.Name, err)
		}
		return nil, fmt.Errorf("read tar header: %w", err)
	}
	raw := s.rec.segment.Bytes()
	frags, sparse, err := ParseSparse(raw, s.rec.total-int64(len(raw)))
	if err != nil {
		return nil, fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if err := s.flushSegment(); err != nil {
		return nil, err
	}
	if sparse && hdr.Size > MaxSparseSize {
		return nil, fmt.Errorf("tar entry %q: sparse file claims %d bytes, more than the %d a layer may hold", hdr.Name, hdr.Size, int64(MaxSparseSize))
	}
	s.cur = hdr
	s.curFragments = nil
	if sparse {
		s.curFragments = frags
	}
	s.rec.inPayload = true
	s.rec.crc.Reset()
	s.rec.payload = 0
	return hdr, nil
}

// Read reads the current entry's content (a sparse file's holes read as
// zeros).
func (s *Splitter) Read(p []byte) (int, error) {
	if s.cur == nil {
		return 0, io.EOF
	}
	return s.tr.Read(p)
}

// DiffID is the sha256 of the whole stream, the layer's diffID. Call it
// once Next has returned io.EOF; it ends the hashing.
func (s *Splitter) DiffID() digest.Digest {
	if s.diffID == "" {
		s.diffID = digest.NewDigestFromBytes(digest.SHA256, s.rec.digest.Sum())
	}
	return s.diffID
}

// Close releases the hashing goroutine of a stream that was not read to
// its end. It is safe to call after DiffID.
func (s *Splitter) Close() { s.rec.digest.Close() }

// Size is the number of uncompressed bytes read so far.
func (s *Splitter) Size() int64 { return s.rec.total }

func (s *Splitter) finishEntry() error {
	if s.cur == nil {
		return nil
	}
	// The payload must be consumed in payload mode; letting tar.Reader skip
	// it would lump data and padding into one raw segment.
	if _, err := io.Copy(io.Discard, s.tr); err != nil {
		return fmt.Errorf("read %q: %w", s.cur.Name, err)
	}
	s.rec.inPayload = false
	if s.curFragments != nil {
		var sum int64
		for _, f := range s.curFragments {
			sum += f.Length
		}
		if sum != s.rec.payload {
			return fmt.Errorf("sparse entry %q: map covers %d bytes, archive holds %d", s.cur.Name, sum, s.rec.payload)
		}
	}
	e := storage.Entry{Type: storage.FileType, Size: s.rec.payload}
	if s.rec.payload > 0 {
		e.Payload = s.rec.crc.Sum(nil)
	}
	e.SetName(s.cur.Name)
	if _, err := s.packer.AddEntry(e); err != nil {
		return fmt.Errorf("record %q: %w", s.cur.Name, err)
	}
	s.cur = nil
	return nil
}

func (s *Splitter) flushSegment() error {
	if s.rec.segment.Len() == 0 {
		return nil
	}
	payload := bytes.Clone(s.rec.segment.Bytes())
	s.rec.segment.Reset()
	if _, err := s.packer.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: payload}); err != nil {
		return fmt.Errorf("record tar segment: %w", err)
	}
	return nil
}

// finishStream records the end-of-archive blocks and whatever padding
// follows them (tar writers pad to their record size, some append more).
func (s *Splitter) finishStream() error {
	s.done = true
	// archive/tar reports io.EOF for a stream cut anywhere at or after an
	// entry's data; only the end-of-archive block proves it is complete.
	start := s.rec.total - int64(s.rec.segment.Len())
	skip := (blockSize - start%blockSize) % blockSize
	if int64(s.rec.segment.Len())-skip < blockSize {
		if s.rec.total == 0 {
			return fmt.Errorf("the stream is empty, not a tar")
		}
		return fmt.Errorf("the tar is truncated: it ends without an end-of-archive block")
	}
	const chunk = 1 << 20
	buf := make([]byte, 32<<10)
	for {
		_, err := s.rec.Read(buf)
		if s.rec.segment.Len() >= chunk {
			if ferr := s.flushSegment(); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar trailer: %w", err)
		}
	}
	if err := s.flushSegment(); err != nil {
		return err
	}
	return io.EOF
}
