package userns

import "testing"

func TestIsIdentityMap(t *testing.T) {
	tests := []struct {
		m    string
		want bool
	}{
		{"         0          0 4294967295\n", true},
		{"0 0 4294967295", true},
		{"         0       1000          1\n", false},
		{"         0     100000      65536\n", false},
		{"0 0 4294967295\n1 1 1\n", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := IsIdentityMap(tc.m); got != tc.want {
			t.Errorf("IsIdentityMap(%q) = %v, want %v", tc.m, got, tc.want)
		}
	}
}
