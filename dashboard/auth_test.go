package dashboard

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		opts Options
		ok   bool
	}{
		{Options{Addr: "127.0.0.1:8443"}, true},
		{Options{Addr: "[::1]:8443"}, true},
		{Options{Addr: "localhost:8443"}, true},
		{Options{Addr: ":8443"}, false},
		{Options{Addr: "0.0.0.0:8443"}, false},
		{Options{Addr: "10.0.0.1:8443"}, false},
		{Options{Addr: "0.0.0.0:8443", TLSCertFile: "c", TLSKeyFile: "k"}, true},
		{Options{Addr: "127.0.0.1:8443", TLSCertFile: "c"}, false},
	} {
		err := checkAddr(c.opts)
		assert.Equal(t, c.ok, err == nil, "%+v: %v", c.opts, err)
		if c.opts.TLSCertFile == "" && !c.ok {
			assert.ErrorIs(t, err, ErrPlainHTTP)
		}
	}
}

// TestCaller: identity headers count only with the trusted proxy's secret,
// and with a proxy configured every action must come through it.
func TestCaller(t *testing.T) {
	const secret = "0123456789abcdef0123"
	req := func(h map[string][]string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/actions/backup", nil)
		for k, vs := range h {
			for _, v := range vs {
				r.Header.Add(k, v)
			}
		}
		return r
	}
	noProxy, withProxy := &Server{}, &Server{proxy: []byte(secret)}
	for _, c := range []struct {
		name    string
		s       *Server
		headers map[string][]string
		user    string
		groups  []string
		refused bool
	}{
		{"no proxy, anonymous", noProxy, nil, "", nil, false},
		{"no proxy, spoofed user", noProxy, map[string][]string{HeaderUser: {"admin"}}, "", nil, true},
		{"no proxy, spoofed group", noProxy, map[string][]string{HeaderGroup: {"system:masters"}}, "", nil, true},
		{"proxy, bypassed", withProxy, nil, "", nil, true},
		{"proxy, wrong secret", withProxy, map[string][]string{HeaderProxySecret: {"nope"}, HeaderUser: {"admin"}}, "", nil, true},
		{"proxy, no user", withProxy, map[string][]string{HeaderProxySecret: {secret}}, "", nil, true},
		{"proxy, user and groups", withProxy, map[string][]string{HeaderProxySecret: {secret}, HeaderUser: {"alice"}, HeaderGroup: {"ops", "dev"}}, "alice", []string{"ops", "dev"}, false},
	} {
		user, groups, err := c.s.caller(req(c.headers))
		var ref refusal
		assert.Equal(t, c.refused, errors.As(err, &ref), "%s: %v", c.name, err)
		if !c.refused {
			require.NoError(t, err, c.name)
			assert.Equal(t, c.user, user, c.name)
			assert.Equal(t, c.groups, groups, c.name)
		}
	}
}

func TestSameOrigin(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9000/actions/backup", nil)
	assert.False(t, sameOrigin(r), "no Origin, no Sec-Fetch-Site")
	r.Header.Set("Origin", "http://evil.example")
	assert.False(t, sameOrigin(r))
	r.Header.Set("Origin", "http://127.0.0.1:9000")
	assert.True(t, sameOrigin(r))
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	assert.False(t, sameOrigin(r), "the browser's word wins")
}
