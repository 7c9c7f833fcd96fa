"""`ambientctl`: the user's handle on the mesh (kubectl-like verbs against the local cluster)."""
