"""Helpers the tests share (images, throwaway projects, servers, tools). Import them from here,
never from a conftest file: conftest files hold fixtures only."""
