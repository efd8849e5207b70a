"""The pure math of the certificate: label counts -> SimuEM bounds -> certified radius (Theorem 1, Eq. 6), input
checks, the smallest useful sample size and the toy model of the lesson. numpy, scipy and integers only: imports no
torch and nothing of certcore outside certcore.math."""
