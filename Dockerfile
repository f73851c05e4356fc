# Minimal CPU image: installs the package and runs the test suite.
# (The DeepMind Lab build stage is added by the Docker issue.)
FROM python:3.11-slim
WORKDIR /opt/scalable_agent2
COPY . .
RUN pip install --no-cache-dir -e ".[test]"
CMD ["python", "-m", "pytest", "-q"]
