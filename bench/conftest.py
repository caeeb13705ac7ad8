import os
import sys

# The repository root is the collection root; `make collection` links it under .collections.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".collections"))
