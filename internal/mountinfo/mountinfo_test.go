package mountinfo

import (
	"slices"
	"testing"
)

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/plain/path", "/plain/path"},
		{`/with\040space`, "/with space"},
		{`/tab\011and\134backslash`, "/tab\tand\\backslash"},
		{`/short\04`, `/short\04`},
		{`/x\`, `/x\`},
		{`/not\xyzoctal`, `/not\xyzoctal`},
	}
	for _, tt := range tests {
		if got := Unescape(tt.in); got != tt.want {
			t.Errorf("Unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPointsHasRoot(t *testing.T) {
	p, err := Points()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(p, "/") {
		t.Errorf("mount points %q lack /", p)
	}
}
