"""certcore Streamlit app: the entry point. One file per page in pages/; all logic lives in certcore."""

import streamlit as st

st.set_page_config(page_title="certcore · certified top-k robustness", page_icon="🛡️", layout="wide")

st.navigation(
    [
        st.Page("pages/certify.py", title="Certify an image", icon=":material/verified_user:", default=True),
        st.Page("pages/what_if.py", title="What-if", icon=":material/tune:"),
        st.Page("pages/accuracy.py", title="Certified accuracy", icon=":material/monitoring:"),
        st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
    ]
).run()
