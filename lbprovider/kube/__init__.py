"""The one door to the Kubernetes API: the only package that imports ``kubernetes``.

``client`` builds the ApiClient, ``cache`` keeps list+watch caches, ``queue`` deduplicates work,
``election`` holds the leader Lease, ``writers`` performs every write (leader only) and
``errors`` turns foreign exceptions into ours. Nothing here decides what to reconcile.
"""
