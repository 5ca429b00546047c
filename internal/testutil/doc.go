// Package testutil holds helpers shared by Cairn's tests: locating the real
// external tools the tests drive (fio, qemu-img, versitygw, ...) and failing
// with an install hint when one is missing on CI.
package testutil
