# Passed to CMake as -DCMAKE_PROJECT_INCLUDE=<this file> when building interface
# packages against the ROS 2 wheels (pip mode).
#
# Why: the wheels' exported CMake targets carry the include directories of the
# machine that built them (/opt/python/cp311-cp311/include/python3.11 and a NumPy
# include dir below /opt/python), so CMake's generate step fails with "includes
# non-existent path". At the end of the top-level directory we rewrite those
# entries to this interpreter's include directories. Nothing outside the build
# tree is touched.
if(COMMAND _mmdistill_fix_wheel_includes)
  return()
endif()

find_program(_MMDISTILL_PY NAMES python3 python REQUIRED)
execute_process(
  COMMAND "${_MMDISTILL_PY}" -c "import sysconfig, numpy; print(sysconfig.get_paths()['include'] + ';' + numpy.get_include())"
  OUTPUT_VARIABLE _mmdistill_py_dirs OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
list(GET _mmdistill_py_dirs 0 MMDISTILL_PYTHON_INCLUDE)
list(GET _mmdistill_py_dirs 1 MMDISTILL_NUMPY_INCLUDE)

function(_mmdistill_fix_wheel_includes)
  get_property(targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(t IN LISTS targets)
    get_target_property(dirs ${t} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs AND "${dirs}" MATCHES "/opt/python/")
      set(fixed "")
      foreach(d IN LISTS dirs)
        if(d MATCHES "^/opt/python/.*numpy")
          list(APPEND fixed "${MMDISTILL_NUMPY_INCLUDE}")
        elseif(d MATCHES "^/opt/python/")
          list(APPEND fixed "${MMDISTILL_PYTHON_INCLUDE}")
        else()
          list(APPEND fixed "${d}")
        endif()
      endforeach()
      list(REMOVE_DUPLICATES fixed)
      set_target_properties(${t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${fixed}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _mmdistill_fix_wheel_includes)
