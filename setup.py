from setuptools import find_packages, setup

setup(
    name="tomaat",
    version="0.1.0",
    description="Volumetric medical image analysis as a network service (TOMAAT, rebuilt)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["tomaat", "tomaat.*"]),
    install_requires=[
        "twisted[tls]>=24.3",
        "klein>=24.8",
        "treq>=24.9",
        "werkzeug>=3.0",
        "SimpleITK>=2.3",
        "numpy>=1.26",
        "pyOpenSSL>=24.0",
        "cryptography>=42",
        "click>=8.1",
        "prometheus-client>=0.20",
        "psycopg[binary]>=3.1",  # the registry's PostgreSQL store (a wheel: nothing to compile)
        "crochet>=2.1",  # the blocking client: the reactor in a background thread
        "rich>=13",  # the client's upload bar and spinner
        "pybase64>=1.3",  # SIMD base64: v1 volumes are base64 text (docs/performance.md)
        "isal>=1.6",  # ISA-L zlib streams: compressed MHA labels written and read 2x faster (docs/performance.md)
        "landlockpy==0.2.0",  # confines the processes that decode untrusted files: files, TCP, scopes (docs/security.md)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "requests>=2.31",
            "requests-toolbelt>=1.0",
            "ruff>=0.5",
            "hypothesis>=6.100",
            "h5py>=3.8",  # crafts hostile HDF5 transforms (external links, virtual datasets) in tests only
        ],
        "tensorflow": ["tensorflow-cpu>=2.16,<2.22", "scikit-image>=0.22"],  # Keras 3; the CPU wheel (see docs/deep-learning.md for GPUs)
        "torch": ["torch==2.13.0", "scikit-image>=0.22"],  # pinned: the CPU build these machines install
        "mesh": ["scikit-image>=0.22"],  # marching cubes for label-to-mesh
        "vtk": ["vtk>=9.3,<10"],  # vtkPolyData meshes, as upstream TOMAAT's apps return them
    },
    entry_points={"console_scripts": ["tomaat=tomaat.cli:main", "tomaat-registry=tomaat.registry.cli:main"]},
)
