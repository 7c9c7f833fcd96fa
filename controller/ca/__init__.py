"""The certificate authority: material (`authority`), request checks (`csr`, `nodeauth`) and the
signing service (`service`) that the controller's 15012 listener serves.
"""
