package changes

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkWriteLayer commits an upper of 10k small files in 100
// directories over a lower holding the same names.
func BenchmarkWriteLayer(b *testing.B) {
	base := b.TempDir()
	lower, upper := filepath.Join(base, "lower"), filepath.Join(base, "upper")
	for _, root := range []string{lower, upper} {
		for d := 0; d < 100; d++ {
			dir := filepath.Join(root, fmt.Sprintf("d%03d", d))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for f := 0; f < 100; f++ {
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), []byte("small file"), 0o644); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := WriteLayer(context.Background(), io.Discard, upper, []string{lower}, WriteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
