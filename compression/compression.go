// Package compression detects a stream's compression from its first bytes
// (never from a file name) and wraps readers and writers accordingly.
package compression

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Format is a compression format.
type Format string

const (
	None  Format = "none"
	Gzip  Format = "gzip"
	Zstd  Format = "zstd"
	Bzip2 Format = "bzip2"
	Xz    Format = "xz"
)

var magics = []struct {
	format Format
	magic  []byte
}{
	{Gzip, []byte{0x1f, 0x8b}},
	{Zstd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{Bzip2, []byte("BZh")},
	{Xz, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
}

// Detect names the format of a stream that starts with head.
func Detect(head []byte) Format {
	for _, m := range magics {
		if bytes.HasPrefix(head, m.magic) {
			return m.format
		}
	}
	return None
}

// ParseFormat accepts the names used on the command line.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case None, Gzip, Zstd:
		return Format(s), nil
	case "":
		return None, nil
	}
	return None, fmt.Errorf("unknown compression %q (want none, gzip or zstd)", s)
}

// Decompress returns the uncompressed stream of r and the format found.
func Decompress(r io.Reader) (io.ReadCloser, Format, error) {
	// Reads at least this large bypass the buffer once it is drained: a
	// plain tar's file contents go straight from the kernel into the
	// reader's buffer.
	br := bufio.NewReaderSize(r, 128<<10)
	head, err := br.Peek(8)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		return nil, None, fmt.Errorf("read stream header: %w", err)
	}
	f := Detect(head)
	rc, err := open(br, f)
	if err != nil || f == None {
		return rc, f, err
	}
	return &namedErrors{rc, f}, f, nil
}

// namedErrors says which decompressor failed: "unexpected EOF" alone
// would not tell a truncated gzip stream from a truncated tar.
type namedErrors struct {
	io.ReadCloser
	format Format
}

func (n *namedErrors) Read(p []byte) (int, error) {
	c, err := n.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s stream: %w", n.format, err)
	}
	return c, err
}

func open(br *bufio.Reader, f Format) (io.ReadCloser, error) {
	switch f {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("open gzip stream: %w", err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<31))
		if err != nil {
			return nil, fmt.Errorf("open zstd stream: %w", err)
		}
		return zr.IOReadCloser(), nil
	case Bzip2:
		return io.NopCloser(bzip2.NewReader(br)), nil
	case Xz:
		zr, err := xz.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("open xz stream: %w", err)
		}
		return io.NopCloser(zr), nil
	}
	return io.NopCloser(br), nil
}

// Compress wraps w so that what is written is compressed as f. Close the
// returned writer to flush it; it does not close w.
func Compress(w io.Writer, f Format) (io.WriteCloser, error) {
	switch f {
	case None, "":
		return nopWriteCloser{w}, nil
	case Gzip:
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case Zstd:
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	}
	return nil, fmt.Errorf("cannot compress as %q (want none, gzip or zstd)", f)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
