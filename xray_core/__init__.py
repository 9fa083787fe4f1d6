"""xray_core: the library behind the pneumonia chest X-ray dashboard.

Plain Python, no Streamlit. TensorFlow is imported only by the functions that need it, so
importing this package (and the dashboard's first page) stays fast.
"""

__version__ = "0.1.0"
