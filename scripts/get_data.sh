#!/usr/bin/env bash
# Make Fashion-MNIST available: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
# when apt-get is usable, otherwise torchvision's download into ${HAM_BENCH_DATA:-data}/FashionMNIST.
set -euo pipefail
debian_dir=/usr/share/datasets/fashion-mnist
if [ -f "$debian_dir/train-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST: $debian_dir"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null && exit 0
    echo "apt-get could not install dataset-fashion-mnist; trying torchvision's download" >&2
fi
root="${HAM_BENCH_DATA:-data}"
"${VENV:-.venv}/bin/python" -c "import torchvision, sys; torchvision.datasets.FashionMNIST(sys.argv[1], train=True, download=True); torchvision.datasets.FashionMNIST(sys.argv[1], train=False, download=True)" "$root"
echo "Fashion-MNIST: $root/FashionMNIST"
