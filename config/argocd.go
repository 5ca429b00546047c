package config

import (
	"embed"
	"fmt"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// ArgoCD holds argocd/ (the health script and the argocd-cm kustomization).
//
//go:embed argocd
var ArgoCD embed.FS

// ArgoCDHealth evaluates the shipped Argo CD health script on obj (an
// unstructured object as the API server delivers it) in gopher-lua, the
// Lua runtime Argo CD embeds, with obj bound as a global the way Argo CD
// does, and returns hs.status and hs.message. Tests use it on recorded and
// live objects.
func ArgoCDHealth(obj map[string]any) (status, message string, err error) {
	script, err := ArgoCD.ReadFile("argocd/health.lua")
	if err != nil {
		return "", "", err
	}
	L := lua.NewState()
	defer L.Close()
	v, err := toLua(L, obj)
	if err != nil {
		return "", "", err
	}
	L.SetGlobal("obj", v)
	if err := L.DoString(string(script)); err != nil {
		return "", "", err
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("health script returned %s, not a table", L.Get(-1).Type())
	}
	return ret.RawGetString("status").String(), strings.TrimSpace(ret.RawGetString("message").String()), nil
}

func toLua(L *lua.LState, v any) (lua.LValue, error) {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			lv, err := toLua(L, e)
			if err != nil {
				return nil, err
			}
			t.RawSetString(k, lv)
		}
		return t, nil
	case []any:
		t := L.NewTable()
		for _, e := range v {
			lv, err := toLua(L, e)
			if err != nil {
				return nil, err
			}
			t.Append(lv)
		}
		return t, nil
	case string:
		return lua.LString(v), nil
	case bool:
		return lua.LBool(v), nil
	case float64:
		return lua.LNumber(v), nil
	case int64:
		return lua.LNumber(v), nil
	case nil:
		return lua.LNil, nil
	}
	return nil, fmt.Errorf("unsupported value %T", v)
}

// ArgoCDHealthFor lists the Argo CD health statuses that agree with a
// kstatus status (what Flux reads): Current is Healthy or Suspended, Failed
// is Degraded, InProgress is Progressing or — for a Ready=False object
// Argo CD cannot wait on, having no timeout — Degraded.
func ArgoCDHealthFor(kstatus string) []string {
	return map[string][]string{
		"Current":    {"Healthy", "Suspended"},
		"Failed":     {"Degraded"},
		"InProgress": {"Progressing", "Degraded"},
	}[kstatus]
}
