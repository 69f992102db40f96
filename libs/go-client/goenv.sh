# Sourced by build.sh and test.sh: builds in GOPATH mode against the Debian-packaged Go sources in
# /usr/share/gocode (golang-google-grpc-dev and friends), offline. GOPATH mode because Debian's packages are
# source trees without module metadata (no go.sum, no module cache), and a go.mod would need every module of
# grpc's dependency graph resolved, which needs the network. The package's import path is
# github.com/keymesh/keymesh/libs/go-client: this folder is symlinked there under a GOPATH of its own (one per
# checkout, so that two checkouts never flip each other's link; the build cache is shared).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEYMESH_GO_CACHE="${KEYMESH_GO_CACHE:-$HOME/.cache/keymesh/go}"
gopath="$KEYMESH_GO_CACHE/gopath-$(printf %s "$here" | md5sum | cut -c1-12)"
link="$gopath/src/github.com/keymesh/keymesh/libs/go-client"
if [ "$(readlink "$link" 2>/dev/null)" != "$here" ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn "$here" "$link"
fi
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$KEYMESH_GO_CACHE/build-cache" GOFLAGS= GOPROXY=off \
  GOTOOLCHAIN=local CGO_ENABLED=0
command -v go >/dev/null 2>&1 || { echo "go not found: apt-get install golang-go (see libs/go-client/README.md)" >&2; exit 1; }
if [ ! -f "$here/gen/keymesh/v1/key_service_grpc.pb.go" ]; then
  echo "libs/go-client/gen is missing: run buf generate proto --template proto/buf.gen.yaml from the repository root" >&2
  exit 1
fi
pkg=github.com/keymesh/keymesh/libs/go-client
cd "$gopath/src/$pkg"
