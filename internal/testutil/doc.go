// Package testutil holds helpers shared by Cairn's tests: locating the real
// external tools the tests drive (fio, qemu-img, versitygw, ...) and failing
// with an install hint when one is missing on CI; the suite starters
// RunEnvtest (a local control plane and a manager in the test process) and
// RunDevSuite (a whole `cairn dev`); and helpers on what those run
// (Volumes, Procs, the health recorder).
package testutil
