"""The toy targets (toy-s, toy-m): their vision tower, their staged build and their evaluation."""
